"""Writing task images: a scaffold (:mod:`.scaffold`) and an offline build (:mod:`.building`)."""

"""Getting accepted tasks executed: queueing, running, recording, calling back."""

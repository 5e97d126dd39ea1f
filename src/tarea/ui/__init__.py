"""The dashboard's static files (served by :mod:`tarea.api.routes.ui`)."""

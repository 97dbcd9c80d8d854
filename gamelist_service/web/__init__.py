"""Sanic and Socket.IO as the service uses them: the app, serve, HTTP routes, the page, namespaces, auth, limits."""

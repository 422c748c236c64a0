"""The HTTP layer: FastAPI app, routes, auth, errors, and the one request pipeline."""

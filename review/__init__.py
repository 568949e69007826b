"""The moderators' HTTP API and console: FastAPI, server-rendered templates, tokens with roles."""

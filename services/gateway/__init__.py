"""The gateway: HTTP in, a request envelope onto the requests topic, the reply out.

``python -m services.gateway`` starts it; ``build_app`` builds the FastAPI app around
an injected ``Bus`` (Kafka in production, an in-memory fake in unit tests).
"""

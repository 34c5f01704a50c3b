"""The OpenAI-compatible endpoint under /v1: request bodies (schemas), what they resolve to (service),
the routes, and the API-only server. Served by `python app.py serve` next to the wizard.
"""

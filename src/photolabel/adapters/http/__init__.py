"""The HTTP service behind ``photolabel serve``.

``store`` keeps jobs and models in one SQLite file, ``jobs`` trains in child
processes outside the request path, and ``app`` (FastAPI) translates requests into
calls on both. Only ``app`` and its helpers import FastAPI.
"""

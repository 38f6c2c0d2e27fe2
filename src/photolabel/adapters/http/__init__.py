"""The HTTP service behind ``photolabel serve``.

``store`` keeps jobs and models in one SQLite file; ``jobs`` runs them in child
processes outside the request path, and ``job_kinds`` says what each kind of job does.
``app`` (FastAPI) builds the service from ``settings``: ``routes/`` holds one module per
resource, ``schemas`` their request and response models, ``deps`` what they share (the
``Service``), ``predicting`` the prediction steps, ``errors`` the one error-to-status
table and ``middleware`` the body-size limit. ``batching`` batches concurrent
predictions per model. Only ``app`` and its helpers import FastAPI.
"""

"""The service's routes, one module per resource; each exposes ``router``, which ``app.create_app`` includes.

``seed`` (static-transfer-learning's ``POST /train`` and ``POST /infer``), ``training`` (``/v1/train`` and
``/v1/jobs``), ``models`` (``/v1/models``), ``predict`` (``/v1/models/{key}/predict*``) and
``health`` (``/livez``, ``/readyz``). A new resource is a new module here and one
``include_router`` line in ``app.py``.
"""

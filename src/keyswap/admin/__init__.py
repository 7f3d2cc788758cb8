"""``keyswap admin``: the management plane's HTTP API (issue 12).

A FastAPI app over the service layer (:mod:`keyswap.manage`): consumers, API keys, signing keys and
audit events under ``/v1``, authenticated with admin tokens (:mod:`.auth`), every error an RFC 9457
problem (:mod:`.problems`), ``ETag``/``If-Match`` (:mod:`.etags`), ``Idempotency-Key`` on POST
(:mod:`.idempotency`), ``X-Request-Id`` and body limits (:mod:`.middleware`). Build the app with
:func:`keyswap.admin.app.build_admin_app`; serve it with ``keyswap admin`` (:mod:`.cli`).
"""

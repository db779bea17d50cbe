"""The HTTP front door (FastAPI, no Ray): `app.create_app(service)` and one module per protocol.

Each protocol module has `router(service)` (its routes over the request core) and may set
`ERROR_STYLE` (how its clients read an error; ours otherwise) with `ERROR_MODEL` (that error body, as
/openapi.json documents it)."""

PROTOCOLS = ("ours", "openrlhf", "vllm", "sglang", "tei", "chat", "slime")

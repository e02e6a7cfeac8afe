"""Request handlers: every module here is imported when the server starts.

Each module registers its request types with ``@handler`` (``backend.server.registry``)
or its job kinds with ``@job_kind`` (``backend.server.jobs``) and keeps its logic thin:
it validates through the declared schema and calls the owning backend package.
"""

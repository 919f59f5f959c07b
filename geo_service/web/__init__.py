"""What both services' HTTP layers share: the error contract, parameters, responses, the guarded route
table, load tracking, metrics, logs and OpenAPI pieces.

It may import aiohttp and the grid's served band (snapshot.grid), nothing else of geodrop: the service and
the collector build on it, never the reverse.
"""

"""The HTTP side: the aiohttp app, API routes, DICOMweb, request limits."""

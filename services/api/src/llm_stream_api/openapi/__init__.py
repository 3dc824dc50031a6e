"""The OpenAPI document: the error and header fragments of the routes (``responses``) and the
limits this process enforces, written into the document (``document``)."""

"""The processes around the screening core: Celery workers, storage adapters, the embedded runner."""

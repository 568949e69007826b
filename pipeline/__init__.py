"""The screening core: bytes -> faces -> scores -> verdicts. Pure Python + torch.

Nothing here imports Celery, SQLAlchemy, boto3 or an HTTP framework (tests/test_layering.py proves it).
"""

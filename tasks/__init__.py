"""The steps of an upgrade: plain typed functions plus thin Prefect task wrappers."""

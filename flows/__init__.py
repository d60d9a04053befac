"""Prefect flows composing the steps in `tasks/`, and the CLI over them."""

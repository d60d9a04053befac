"""The sandbox: a throw-away, Mender-shaped installation on the local Docker engine.

Used by the tests, the benchmarks and `mender-upgrade demo`. Nothing in `tasks/` or `flows/`
imports this package: production code only sees Docker, git, S3 and MongoDB.
"""

"""A fixture release's production/config templates (prod.yml, enterprise.yml) and the gateway's
configuration files (nginx TLS, Traefik)."""

from __future__ import annotations

from mender_upgrade.sandbox.release_compose import _TRAEFIK_27_COMMAND, _extra_compose_file
from mender_upgrade.sandbox.release_layout import _BACKEND, _HEALTH_CHECKED, Tree, _fill, _vkey, _yaml
from mender_upgrade.sandbox.releases import Release

_PROD_HEADER = """\
# this is a template file for production setup, consult
# https://docs.docker.com/compose/compose-file/ for details on syntax and usage
#
# Notes:
# - integration/docker-compose.yml file is assumed to be included
# - integration/docker-compose.storage.minio.yml is assumed to be included
# - all services are part of `mender` network (service names are unchanged)
# - keys and certificates are generated using keygen utility from integration
#   repository, keys and certificates are stored in ./keys-generated directory
# - certificates and key are mounted into containers using volumes
# - minio artifacts are stored in a named volume `mender-artifacts`; volume
#   needs to be created manually using `docker volume create mender-artifacts`

version: '2.1'
services:
"""
_LOGGING = """\
        logging:
            options:
                max-file: "10"
                max-size: "50m"
"""
_PROD_VOLUMES = """
volumes:
    # mender artifacts storage
    mender-artifacts:
      external:
          # use external volume created manually
          name: mender-artifacts
    # mongo service database
    mender-db:
      external:
          # use external volume created manually
          name: mender-db
"""
_ALIAS_COMMENT_BUGGY = """\
                    # mender-api-gateway also serves the artifact storage: set
                    # this alias to the DNS name that storage will be available
                    # on, for instance if devices will access storage using
                    # https://s3.acme.org:9000, then set this to
                    # https://s3.acme.org:9000
"""
_ALIAS_COMMENT = """\
                    # mender-api-gateway also serves the artifact storage: set
                    # this alias to the DNS name that storage will be available
                    # on, for instance if devices will access storage using
                    # https://s3.acme.org, then set this to s3.acme.org
"""


def _keys_path(version: str, what: str) -> str:
    """Repo-root relative path of a keygen output: `gateway`/`storage` cert base, or a service key."""
    base = "./production/keys-generated"
    if what in ("deviceauth", "useradm"):
        return f"{base}/keys/{what}/private.key"
    if _vkey(version) >= (3, 1):
        return f"{base}/cert"
    return f"{base}/certs/{'api-gateway' if what == 'gateway' else 'storage-proxy'}"


def _backend_overrides(version: str) -> str:
    out = []
    for name in ("mender-workflows-server", "mender-useradm", "mender-device-auth", "mender-inventory"):
        out.append(f"\n    {name}:\n        command: server --automigrate\n")
        key = {"mender-useradm": "useradm", "mender-device-auth": "deviceauth"}.get(name)
        if key:
            out.append(f"        volumes:\n            - {_keys_path(version, key)}:/etc/{key}/rsa/private.pem:ro\n")
        out.append(_LOGGING)
    return "".join(out)


def _gateway_override(version: str) -> str:
    v = _vkey(version)
    gw, st = _keys_path(version, "gateway"), _keys_path(version, "storage")
    out = ["\n    mender-api-gateway:\n"]
    if (2, 7) <= v < (3, 0):
        out.append("        command:\n" + "".join(f"            - {arg}\n" for arg in _TRAEFIK_27_COMMAND))
    out.append("        ports:\n            # list of ports API gateway is made available on\n"
               '            - "443:443"\n')
    if v < (2, 7):
        out.append("        networks:\n            - mender\n")
        mounts = [f"{gw}/cert.crt:/var/www/mendersoftware/cert/cert.crt:ro",
                  f"{gw}/private.key:/var/www/mendersoftware/cert/private.key:ro"]
    else:
        comment = _ALIAS_COMMENT_BUGGY if v < (3, 0, 1) else _ALIAS_COMMENT
        out.append("        networks:\n            mender:\n                aliases:\n"
                   f"{comment}                    - set-my-alias-here.com\n")
        certs = "/certs" if v < (3, 0) else "/etc/traefik/certs"
        mounts = ["./tls.toml:/config/tls.toml"] if v < (3, 0) else []
        mounts += [f"{gw}/cert.crt:{certs}/cert.crt:ro", f"{gw}/private.key:{certs}/private.key:ro"]
        if v < (3, 1):
            mounts += [f"{st}/cert.crt:{certs}/s3.docker.mender.io.crt:ro",
                       f"{st}/private.key:{certs}/s3.docker.mender.io.key:ro"]
    out.append("        volumes:\n" + "".join(f"            - {m}\n" for m in mounts))
    out.append(_LOGGING)
    if v >= (3, 2):
        out.append("        environment:\n"
                   "            # comma separated list of the host names the API gateway accepts\n"
                   "            # requests for: the gateway's DNS name and the storage alias\n"
                   "            ALLOWED_HOSTS: my-gateway-dns-name,set-my-alias-here.com\n")
    else:
        out.append("        environment:\n            ALLOWED_HOSTS: my-gateway-dns-name\n")
    return "".join(out)


_STORAGE_PROXY_OVERRIDE = """
    storage-proxy:
        ports:
            # outside port mapping for artifact storage (note that storage-proxy listens on port 9000)
            - "9000:9000"
        networks:
            mender:
                aliases:
                    # change the alias to DNS name that storage will be
                    # available on, for instance if devices will access storage
                    # using https://s3.acme.org:9000, then set this to
                    # s3.acme.org
                    - set-my-alias-here.com
        environment:

            # use nginx syntax for rate limiting, see
            # https://nginx.org/en/docs/http/ngx_http_core_module.html#limit_rate
            # Examples:
            #   1m - 1MB/s
            #   512k - 512kB/s
            DOWNLOAD_SPEED: 1m
            MAX_CONNECTIONS: 100
        volumes:
            - @ST@/cert.crt:/var/www/storage-proxy/cert/cert.crt:ro
            - @ST@/private.key:/var/www/storage-proxy/cert/private.key:ro
            - ./storage-proxy/nginx.conf:/usr/local/openresty/nginx/conf/nginx.conf
"""


def _deployments_override(version: str) -> str:
    v = _vkey(version)
    out = ["\n    mender-deployments:\n        command: server --automigrate\n"]
    if v < (3, 3):
        cert = "/etc/ssl/certs/storage-proxy.crt" if v < (2, 7) else "/etc/ssl/certs/s3.docker.mender.io.crt"
        out.append(f"        volumes:\n            - {_keys_path(version, 'storage')}/cert.crt:{cert}:ro\n")
        out.append(f"        environment:\n            STORAGE_BACKEND_CERT: {cert}\n")
    else:
        out.append("        environment:\n")
    out.append("            # access key, the same value as MINIO_ACCESS_KEY\n"
               "            DEPLOYMENTS_AWS_AUTH_KEY:\n"
               "            # secret, the same valie as MINIO_SECRET_KEY\n"
               "            DEPLOYMENTS_AWS_AUTH_SECRET:\n\n")
    if v < (2, 7):
        out.append("            # deployments service uses signed URLs, hence it needs to access\n"
                   "            # storage-proxy using exactly the same name as devices will; if\n"
                   "            # devices will access storage using https://s3.acme.org:9000, then\n"
                   "            # set this to https://s3.acme.org:9000\n"
                   "            DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com:9000\n")
    elif v < (3, 3):
        out.append("            # deployments service uses signed URLs, hence it needs to access\n"
                   "            # the storage using exactly the same name as devices will; if\n"
                   "            # devices will access storage using https://s3.acme.org, then\n"
                   "            # set this to https://s3.acme.org\n"
                   "            DEPLOYMENTS_AWS_URI: https://set-my-alias-here.com\n")
    else:
        out.append("            # deployments talks to minio directly and signs URLs for the\n"
                   "            # external name devices use; if devices will access storage\n"
                   "            # using https://s3.acme.org, then set this to https://s3.acme.org\n"
                   "            DEPLOYMENTS_AWS_URI: http://minio:9000\n"
                   "            DEPLOYMENTS_AWS_EXTERNAL_URI: https://set-my-alias-here.com\n")
    out.append(_LOGGING)
    return "".join(out)


_DATA_OVERRIDES = """
    minio:
        environment:
            # access key
            MINIO_ACCESS_KEY:
            # secret
            MINIO_SECRET_KEY:
        volumes:
            # mounts a docker volume named `mender-artifacts` as /export directory
            - mender-artifacts:/export:rw

    mender-mongo:
        volumes:
            - mender-db:/data/db:rw
"""
_REPORTING_OVERRIDES = """
    mender-reporting:
        command: server --automigrate
@LOGGING@
    mender-opensearch:
        # OpenSearch needs `sysctl -w vm.max_map_count=262144` on the host and
        # at least 6% free disk space
        environment:
            OPENSEARCH_JAVA_OPTS: "-Xms1g -Xmx1g"
"""


def _prod_template(version: str) -> str:
    parts = [_PROD_HEADER, _backend_overrides(version), _gateway_override(version)]
    if Release(version).has_storage_proxy:
        parts.append(_fill(_STORAGE_PROXY_OVERRIDE, ST=_keys_path(version, "storage")))
    parts += [_deployments_override(version), _DATA_OVERRIDES]
    if Release(version).has_reporting:
        parts.append(_fill(_REPORTING_OVERRIDES, LOGGING=_LOGGING.rstrip("\n")))
    parts.append(_PROD_VOLUMES)
    return "".join(parts)


_ENTERPRISE_TEMPLATE = """\
# This is a template file for running Mender Enterprise. It builds on the
# prod.yml template file, so everything described there applies to this template
# as well.
#
# Notes:
# - integration/docker-compose.enterprise.yml file is assumed to be included

version: '2.1'
services:

    mender-device-auth:
        environment:
            # Set this to a tenant token that should be used for clients that
            # don't supply a tenant token. If empty, clients without a tenant
            # token will be rejected.
            DEVICEAUTH_DEFAULT_TENANT_TOKEN: ''
"""


def _enterprise_template(version: str) -> str:
    text = _ENTERPRISE_TEMPLATE
    if _extra_compose_file(version) == "docker-compose.connect.yml":
        text += '\n    mender-deviceconnect:\n        environment:\n            DEVICECONNECT_ENABLE_AUDIT: "1"\n'
    if _vkey(version) >= (3, 3):
        key = _keys_path(version, "useradm")
        text += ("\n    mender-useradm:\n        volumes:\n"
                 f"            - {key}:/etc/useradm-enterprise/rsa/private.pem:ro\n")
    return text


# --- gateway configuration files -------------------------------------------------------------

_TLS_TOML = """\
[tls.stores]
  [tls.stores.default]
    [tls.stores.default.defaultCertificate]
      certFile = "/certs/cert.crt"
      keyFile = "/certs/private.key"

[[tls.certificates]]
  certFile = "/certs/s3.docker.mender.io.crt"
  keyFile = "/certs/s3.docker.mender.io.key"
"""
_STORAGE_PROXY_NGINX = """\
worker_processes 1;

events {
    worker_connections 1024;
}

http {
    server {
        listen 9000 ssl;
        ssl_certificate /var/www/storage-proxy/cert/cert.crt;
        ssl_certificate_key /var/www/storage-proxy/cert/private.key;
        client_max_body_size 0;

        location / {
            limit_rate_after 1m;
            set_by_lua $limit_rate 'return os.getenv("DOWNLOAD_SPEED")';
            proxy_pass http://minio:9000;
            proxy_set_header Host $http_host;
        }
    }
}
"""


def _traefik_files(version: str) -> Tree:
    v = _vkey(version)
    images = Release(version).images()
    routes = {name: _BACKEND[name][0] for name in _HEALTH_CHECKED}
    if "mender-reporting" in images:
        routes["mender-reporting"] = "reporting"
    middlewares = ["sec-headers", "compression"]
    routers: dict[str, object] = {
        route: {
            "entrypoints": "https", "middlewares": middlewares,
            "rule": f"PathPrefix(`/api/management/{{version:v[0-9]+}}/{route}`)",
            "service": route, "tls": True,
        } for route in routes.values()
    }
    routers["minio"] = {
        "entrypoints": "https", "middlewares": middlewares,
        "rule": "HeadersRegexp(`X-Amz-Date`, `.+`) || PathPrefix(`/mender-artifact-storage`)",
        "service": "minio", "tls": True,
    }
    services: dict[str, object] = {
        route: {"loadBalancer": {"servers": [{"url": f"http://{name}:8080"}]}} for name, route in routes.items()
    }
    services["minio"] = {"loadBalancer": {"servers": [{"url": "http://minio:9000"}]}}
    if v >= (3, 2):
        routers["hostname-checker"] = {
            "entrypoints": "https", "middlewares": ["sec-headers"], "priority": 999, "tls": True,
            "rule": '! Host(`{{join "`,`" (splitList "," (env "ALLOWED_HOSTS"))}}`)', "service": "noop@internal",
        }
    tls: dict[str, object] = {
        "stores": {"default": {"defaultCertificate": {
            "certFile": "/etc/traefik/certs/cert.crt", "keyFile": "/etc/traefik/certs/private.key"}}},
    }
    if v < (3, 1):
        tls["certificates"] = [{"certFile": "/etc/traefik/certs/s3.docker.mender.io.crt",
                                "keyFile": "/etc/traefik/certs/s3.docker.mender.io.key"}]
    header = "# Dynamic traefik configuration\n"
    middleware_doc = {"http": {"middlewares": {
        "sec-headers": {"headers": {"stsSeconds": 31536000, "browserXssFilter": True, "frameDeny": True}},
        "compression": {"compress": True},
    }}}
    return {
        "config/traefik/traefik.yaml": (_yaml({"http": {"routers": routers, "services": services}}, header, 2), False),
        "config/traefik/traefik.middlewares.yaml": (_yaml(middleware_doc, header, 2), False),
        "config/traefik/traefik.tls.yaml": (_yaml({"tls": tls}, header, 2), False),
    }

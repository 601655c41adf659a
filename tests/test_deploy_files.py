"""The Docker files (no Docker engine here): docker-compose.yml, the Dockerfile and the
nginx configs agree with each other and with the settings, on what matters for a
deployment; and the image's health check, run against a real server, tells healthy from
not."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PRODUCTION_HOST, ROOT, free_port

NGINX_DIR = ROOT / "deploy" / "nginx"
PROXY_INCLUDE = NGINX_DIR / "llmserver-proxy.conf"
REPLICAS = ("llmserver-1", "llmserver-2")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_env_names() -> set[str]:
    """Every environment variable llmserver/settings.py reads."""
    source = (ROOT / "llmserver" / "settings.py").read_text()
    return set(re.findall(r'(?:env\.[a-z]+|_switch|_positive_int)\("([A-Z_]+)"', source))


def test_two_replicas_share_postgres_and_redis_behind_nginx(compose):
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "nginx", *REPLICAS} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["nginx"]["image"] == "nginx:1.25"
    for name in REPLICAS:
        replica = services[name]
        env = replica["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["TRUST_X_FORWARDED_FOR"] == "true"
        for name_ in ("PRODUCTION", "SECRET_KEY", "ALLOWED_HOSTS"):
            assert name_ in env
        assert "ports" not in replica  # reachable through nginx only (it trusts X-Forwarded-For)
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert set(services["nginx"]["depends_on"]) == set(REPLICAS)


def test_the_model_is_mounted_read_only_where_model_path_points(compose):
    for name in REPLICAS:
        replica = compose["services"][name]
        mounts = [volume.rsplit(":", 2) for volume in replica["volumes"]]
        assert [(source, target) for source, target, mode in mounts if mode == "ro"] == [
            ("${MODEL_DIR:-./models/demo}", "/models")]
        assert replica["environment"]["MODEL_PATH"] == "/models"


def test_every_variable_given_to_the_replicas_is_one_the_settings_read(compose):
    read = settings_env_names()
    assert {"TRUST_X_FORWARDED_FOR", "TRUST_X_FORWARDED_PROTO", "DATABASE_URL", "REDIS_URL"} <= read
    given = set()
    for name in ("migrate", *REPLICAS):
        given |= set(compose["services"][name]["environment"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    env_block = re.search(r"^ENV MODEL_PATH.*?(?=^\S)", dockerfile, re.M | re.S).group(0)
    given |= set(re.findall(r"([A-Z_]+)=", env_block))
    assert given <= read, given - read
    # ...and each is explained in .env.example.
    example = (ROOT / ".env.example").read_text()
    for name in given:
        assert re.search(rf"^(# )?{name}=", example, re.M), name


def test_nginx_uses_the_shared_proxy_settings(compose):
    mounts = dict(volume.rsplit(":", 1)[0].split(":") for volume in compose["services"]["nginx"]["volumes"])
    assert mounts["./deploy/nginx/docker.conf"] == "/etc/nginx/conf.d/default.conf"
    assert mounts["./deploy/nginx/llmserver-proxy.conf"] == "/etc/nginx/llmserver-proxy.conf"
    docker_conf = (NGINX_DIR / "docker.conf").read_text()
    assert "include /etc/nginx/llmserver-proxy.conf;" in docker_conf
    assert re.findall(r"server (llmserver-\d):8000;", docker_conf) == list(REPLICAS)
    # The same file `make cluster` renders its config with.
    assert "include {{PROXY_INCLUDE}};" in (NGINX_DIR / "cluster.conf.template").read_text()
    # 10 MB: MAX_REQUEST_SIZE_MB's default, which compose leaves alone.
    assert "client_max_body_size 10m;" in docker_conf
    assert "MAX_REQUEST_SIZE_MB" not in compose["services"]["llmserver-1"]["environment"]


def test_the_shared_proxy_settings_are_sse_and_websocket_safe():
    text = PROXY_INCLUDE.read_text()
    http, ws = (re.search(rf"location {path} \{{(.*?)\n\}}", text, re.S).group(1) for path in ("/", "/ws/"))
    for block in (http, ws):
        for directive in ("proxy_pass http://llmserver;", "proxy_http_version 1.1;", "proxy_buffering off;",
                          "proxy_cache off;", "proxy_read_timeout 3600s;", "proxy_send_timeout 3600s;",
                          "proxy_set_header Host $http_host;", "proxy_set_header X-Forwarded-For $remote_addr;",
                          "proxy_set_header X-Forwarded-Proto $scheme;", "add_header X-Upstream $upstream_addr always;"):
            assert directive in block, directive
    assert 'proxy_set_header Connection "";' in http
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert 'proxy_set_header Connection "upgrade";' in ws
    assert "ws/chat" in (ROOT / "chat" / "routing.py").read_text()  # the socket's path is under /ws/


def test_the_docker_nginx_config_is_valid_for_nginx(tmp_path):
    """nginx -t on docker.conf with the shared include, the replicas' names made local."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx is None:
        pytest.skip("nginx is not installed (make nginx)")
    server = (NGINX_DIR / "docker.conf").read_text()
    server = re.sub(r"llmserver-\d:8000", f"127.0.0.1:{free_port()}", server)
    server = server.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    server = server.replace("/etc/nginx/llmserver-proxy.conf", str(PROXY_INCLUDE))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
                    f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
                    f"{server}\n}}\n")
    checked = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_image_health_check_asks_health(production):
    """Against the session's PRODUCTION=true server, whose ALLOWED_HOSTS has one name
    (the check must send it), and against a port where nothing listens."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM python:3.11-slim\n" in dockerfile
    assert re.search(r'^HEALTHCHECK .*\\\n\s+CMD \["python", "deploy/healthcheck.py"\]', dockerfile, re.M)
    assert "\nUSER llmserver\n" in dockerfile and "\nEXPOSE 8000\n" in dockerfile
    assert 'CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile

    def check(port: int, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "deploy/healthcheck.py"], cwd=ROOT, capture_output=True, text=True,
                              env={"SERVER_PORT": str(port), "PATH": "/usr/bin:/bin", **env}, timeout=30)

    port = int(production.base_url.rsplit(":", 1)[1])
    begun = len(production.log())
    healthy = check(port, ALLOWED_HOSTS=PRODUCTION_HOST)
    assert healthy.returncode == 0, healthy.stderr
    assert "GET /health 200 " in production.log()[begun:]
    down = check(free_port(), ALLOWED_HOSTS=PRODUCTION_HOST)
    assert down.returncode == 1
    assert "Connection refused" in down.stderr

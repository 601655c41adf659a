# llmserver: one server process (Daphne + the engine) per container; see docker-compose.yml
# for two replicas behind nginx, with PostgreSQL and Redis (docs/scaling.md).
#
#   docker build -t llmserver .
#   docker run --rm -e DATABASE_URL=... python manage.py migrate --noinput   # once, first
#   docker run -p 8000:8000 -v "$PWD/models/demo:/models:ro" -e DATABASE_URL=... \
#       -e PRODUCTION=true -e SECRET_KEY=... -e ALLOWED_HOSTS=... llmserver
#
# The model is not in the image: mount its folder read-only at /models (MODEL_PATH).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin llmserver
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# The static files, hashed and compressed, into STATIC_ROOT (/app/staticfiles): a server
# with PRODUCTION=true refuses to start without them. The key and host here serve this
# step only; every container is given its own.
RUN PRODUCTION=true ALLOWED_HOSTS=build.invalid \
    SECRET_KEY=collectstatic-at-build-time-only-never-used-to-sign-anything-0123456789 \
    python manage.py collectstatic --noinput

USER llmserver

ENV MODEL_PATH=/models \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8000
EXPOSE 8000

# /health answers 200 once the model is loaded (first start: a few seconds for the demo
# model, longer for a large one).
HEALTHCHECK --interval=10s --timeout=6s --start-period=120s --retries=3 \
    CMD ["python", "deploy/healthcheck.py"]

# SIGTERM drains the server (requests in flight finish, up to SHUTDOWN_GRACE_SECONDS):
# give `docker stop` a longer timeout than that (compose: stop_grace_period).
# Migrations are not run here: run `python manage.py migrate --noinput` once per release
# (compose: the migrate service), not by each replica at start.
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]

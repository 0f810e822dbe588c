# The rollout controller and its sandbox workspace: both are the `rollout` command.
#
#   docker build -t rollout .
#   docker run --rm -p 127.0.0.1:8080:8080 -e ROLLOUT_API_TOKENS=<token>:operator \
#     -e DATABRICKS_HOST=https://<workspace> -e DATABRICKS_TOKEN=<token> -v rollout-data:/data rollout
#
# docker-compose.yml runs it with the sandbox, Prometheus, Alertmanager and Grafana.

# The wheel is built in its own stage, so the runtime image holds neither the sources nor the
# build backend.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# What the wheel is made of (pyproject.toml): the package, the built-in policies it ships
# as rollout/_policies, and the README as its description.
COPY pyproject.toml README.md ./
COPY policies ./policies
COPY rollout ./rollout
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
# With the databricks extra: every Databricks sign-in method (databricks-sdk), not only PAT/M2M.
RUN pip install "$(ls /wheels/*.whl)[databricks]" && rm -rf /wheels
# An unprivileged user. /data holds the SQLite store; it belongs to that user, so a named
# volume mounted there (empty volumes take the ownership of the directory they hide) is
# writable.
RUN groupadd --system --gid 10001 rollout \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin rollout \
    && mkdir /data && chown rollout:rollout /data
# Numeric, so that "run as non-root" checks (Kubernetes' runAsNonRoot) can verify it.
USER 10001:10001
WORKDIR /data
ENV ROLLOUT_STORE_URL=sqlite:////data/rollout.db
# 8080: `rollout serve` (API, /metrics); 8765: `rollout sandbox`.
EXPOSE 8080 8765
ENTRYPOINT ["rollout"]
# Listening beyond loopback needs ROLLOUT_API_TOKENS; without them `serve` refuses to start.
CMD ["serve", "--host", "0.0.0.0"]

# podkit and every component in one image:
#   docker build -t podkit:0.1.0 .
# `podkit render kubernetes` runs it by default (--image to change); an app's own image starts
# FROM it (`podkit render image` writes that Dockerfile).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# redis: the distributed backend of leases and queues in a cluster.
RUN pip install --no-cache-dir '.[redis]' \
    && rm -rf /src \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin podkit
WORKDIR /app
USER 10001

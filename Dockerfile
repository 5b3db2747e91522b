# mqserve image: the same image runs `mqserve worker` (default), `mqserve gateway` and
# `mqserve deploy` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first, so that editing examples does not reinstall them.
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY broker ./broker
COPY gateway ./gateway
RUN pip install --no-cache-dir . && rm -rf build *.egg-info

# The rest of the project (examples/, ...): `mqserve deploy module:app` imports from /app.
COPY . .

RUN useradd --create-home --uid 10001 mqserve
USER mqserve

EXPOSE 8000
CMD ["mqserve", "worker"]

# Wakala engine image. Built by `docker compose --profile engine up -d --build`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Copy only what the package build needs (no .venv, .git or local state).
COPY pyproject.toml README.md constraints.txt ./
COPY dispatch ./dispatch
COPY streams ./streams
COPY geo ./geo
COPY schema ./schema
COPY loadtest ./loadtest

RUN pip install -c constraints.txt . \
    && useradd --system --uid 10001 --home-dir /app wakala

USER wakala
EXPOSE 8080

ENTRYPOINT ["wakala"]
CMD ["engine"]

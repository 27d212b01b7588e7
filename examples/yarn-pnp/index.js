'use strict';

// Under Plug'n'Play there is no node_modules: `yarn start` runs node with .pnp.cjs
// preloaded, which resolves these from the lockfile's packages.
const { serve } = require('@hono/node-server');
const { Hono } = require('hono');

const app = new Hono();
app.get('/', (c) => c.text('yarn-pnp ok\n'));
app.get('/healthz', (c) => c.json({ ok: true, pnp: Boolean(process.versions.pnp) }));

const port = Number(process.env.PORT || 3000);
// hostname 0.0.0.0: all interfaces, as a pod must.
serve({ fetch: app.fetch, port, hostname: '0.0.0.0' }, (info) =>
  console.log(`yarn-pnp listening on ${info.address}:${info.port}`),
);

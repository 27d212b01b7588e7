'use strict';

const Koa = require('koa');

const app = new Koa();

app.use(async (ctx) => {
  if (ctx.path === '/healthz') {
    ctx.body = { ok: true };
    return;
  }
  if (ctx.path !== '/') return; // Koa answers 404
  ctx.type = 'text/plain';
  ctx.body = 'yarn-classic ok\n';
});

const port = Number(process.env.PORT || 3000);
// No host argument: listen on all interfaces, as a pod must.
const server = app.listen(port, () => console.log(`yarn-classic listening on :${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));

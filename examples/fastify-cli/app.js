'use strict';

// A Fastify plugin, as `fastify generate` lays it out: fastify-cli creates the server,
// registers this plugin and listens (address and port come from the start script).
module.exports = async function app(fastify, opts) {
  fastify.get('/', async (request, reply) => {
    reply.type('text/plain');
    return 'fastify-cli ok\n';
  });

  fastify.get('/healthz', async () => ({ ok: true, prefix: opts.prefix ?? '/' }));
};

// Read by fastify-cli when it builds the server.
module.exports.options = { logger: { level: 'info' } };

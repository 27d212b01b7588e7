// Change this line to see a code-only redeploy.
exports.greeting = () => 'Hello from Aether!\n';

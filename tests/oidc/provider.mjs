// A real OpenID provider on 127.0.0.1 for keyswap's tests: panva's oidc-provider, client_credentials
// with resource indicators, issuing RFC 9068 JWT access tokens (typ at+jwt).
//
// One client per algorithm: client "svc-<ALG>" (secret "test-secret-<ALG>", a test value) gets access
// tokens for the audience RESOURCE signed with <ALG> (RS256, PS256, ES256 or EdDSA). Prints one JSON
// line {"issuer": ...} once it listens; stops on SIGTERM or when stdin closes.
import http from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const RESOURCE = process.env.RESOURCE || 'https://api.test';
const ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA'];
const PREFIX = process.env.ISSUER_PATH || '';

async function signingKeys() {
  const keys = [];
  for (const [alg, options] of [
    ['RS256', { modulusLength: 2048, extractable: true }],
    ['PS256', { modulusLength: 2048, extractable: true }],
    ['ES256', { extractable: true }],
    ['EdDSA', { crv: 'Ed25519', extractable: true }],
  ]) {
    const { privateKey } = await generateKeyPair(alg, options);
    keys.push({ ...(await exportJWK(privateKey)), kid: `key-${alg}`, alg, use: 'sig' });
  }
  return keys;
}

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}${PREFIX}`;

const provider = new Provider(issuer, {
  clients: ALGS.map((alg) => ({
    client_id: `svc-${alg}`,
    client_secret: `test-secret-${alg}`,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  jwks: { keys: await signingKeys() },
  // orders:*: the verifier's tests; consumers:read, keys:write: the admin API's (tests/admin).
  scopes: ['orders:read', 'orders:write', 'consumers:read', 'keys:write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator, client) => ({
        scope: 'orders:read orders:write consumers:read keys:write',
        audience: resourceIndicator,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: client.clientId.slice('svc-'.length) } },
      }),
    },
  },
});

const callback = provider.callback();
if (PREFIX) {
  server.on('request', (req, res) => {
    if (req.url.startsWith(PREFIX)) {
      req.url = req.url.slice(PREFIX.length) || '/';
      callback(req, res);
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
} else {
  server.on('request', callback);
}
process.stdout.write(`${JSON.stringify({ issuer, resource: RESOURCE })}\n`);

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();

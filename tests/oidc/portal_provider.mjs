// A real OpenID provider for the developer portal's sign-in tests (tests/portal/test_oidc.py):
// panva's oidc-provider with its development login pages (any login name signs in; the account's
// e-mail is <login>@example.com, verified) and one public client "portal" (PKCE required) whose
// redirect URI is $REDIRECT_URI. Prints one JSON line {"issuer": ...} once it listens; stops on
// SIGTERM or when stdin closes.
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'portal',
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    },
  ],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, email: `${id}@example.com`, email_verified: true }),
  }),
  cookies: { keys: ['portal-tests-only'] },
  features: { devInteractions: { enabled: true } },
});
server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer })}\n`);

const stop = () => process.exit(0);  // the browser keeps connections open: do not wait for them
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();

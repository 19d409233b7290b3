// A real OpenID provider (the certified `oidc-provider` package) on a free
// loopback port, for careplane-identity's tests. Started by the tests with
// `node provider.mjs <dir with node_modules>`; prints one JSON line
// {"issuer": ...} on stdout when it listens, and dies with its parent's pipe.
//
// What is test-only here, and why:
// - The interaction (login) step is automatic: the account is taken from the
//   authorization request's `login_hint` ("alice" or "alice;mfa", which adds
//   amr ["pwd","otp"]), so the Rust test plays the browser with plain HTTP.
// - The device flow (RFC 8628) answers with `interval: 1` (the default of
//   5 s would only slow the tests down) and the client `careplane-short`'s
//   device codes expire after 2 s (for the expiry test). Its user-code page
//   is the provider's own: the tests submit its forms over HTTP, and the
//   login step is automatic from the device request's `login_hint`.
// - POST /test/sign signs arbitrary claims with the provider's own keys (or
//   with a fresh key under the same kid, `"key":"other"`), so the tests can
//   present a real provider's signature on an expired or wrong-issuer token.
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = path.join(process.argv[2], 'node_modules');
const { default: Provider } = await import(pathToFileURL(path.join(modules, 'oidc-provider', 'lib', 'index.js')));
const jose = await import(pathToFileURL(path.join(modules, 'jose', 'dist', 'node', 'esm', 'index.js')));

const GROUPS = {
  alice: ['careplane-viewers'],
  bob: ['careplane-security'],
  carol: ['careplane-admins'],
  dave: ['careplane-stmarys-ops'],
};

async function key(alg, kid) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true, crv: alg === 'EdDSA' ? 'Ed25519' : undefined });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid, alg, use: 'sig' };
}
const keys = [await key('RS256', 'rsa-1'), await key('ES256', 'ec-1'), await key('EdDSA', 'ed-1')];

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const client = (client_id, alg) => ({
  client_id,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  redirect_uris: ['http://127.0.0.1/callback'],
  grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  id_token_signed_response_alg: alg,
});

const provider = new Provider(issuer, {
  clients: [
    client('careplane-cli', 'RS256'),
    client('careplane-es', 'ES256'),
    client('careplane-ed', 'EdDSA'),
    client('other-app', 'RS256'),
    client('careplane-short', 'RS256'),
  ],
  jwks: { keys },
  cookies: { keys: ['careplane-test-cookie-key'] },
  pkce: { required: () => true },
  claims: { openid: ['sub', 'amr', 'acr'], email: ['email'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  features: { devInteractions: { enabled: false }, deviceFlow: { enabled: true } },
  ttl: { DeviceCode: (ctx, token, client) => (client.clientId === 'careplane-short' ? 2 : 600) },
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    if (!GROUPS[id]) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.org`, groups: GROUPS[id] };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email groups');
    await grant.save();
    return grant;
  },
});
provider.on('device_authorization.success', (ctx, body) => { body.interval = 1; });
// Plain HTTP on loopback: tell koa the (test) connection is what it is.
provider.proxy = true;

const callback = provider.callback();
server.on('request', async (req, res) => {
  try {
    if (req.url.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name === 'consent') {
        const grant = new provider.Grant({ clientId: details.params.client_id, accountId: details.session.accountId });
        grant.addOIDCScope('openid email groups');
        return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
      }
      const [account, factor] = String(details.params.login_hint || '').split(';');
      if (!GROUPS[account]) {
        return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'unknown test user' });
      }
      const login = { accountId: account, amr: factor === 'mfa' ? ['pwd', 'otp'] : ['pwd'] };
      return provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
    }
    if (req.method === 'POST' && req.url === '/test/sign') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const { claims, alg = 'RS256', kid, key: which = 'provider' } = JSON.parse(body);
      const own = keys.find((k) => k.alg === alg);
      const jwk = which === 'other' ? await key(alg, own.kid) : own;
      const signer = await jose.importJWK(jwk, alg);
      const token = await new jose.SignJWT(claims).setProtectedHeader({ alg, kid: kid ?? own.kid, typ: 'JWT' }).sign(signer);
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ token }));
    }
    return callback(req, res);
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(e && e.stack || e));
  }
});

process.stdout.write(JSON.stringify({ issuer }) + '\n');
// The test holds our stdin; when it goes away (the test ended or died), so do we.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();

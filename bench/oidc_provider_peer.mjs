// The peer for bench/oidc_tokens.py: node oidc-provider (a certified OpenID provider) set up
// like the bridge for the benchmark: client_credentials, ES256, JWT access tokens (RFC 9068).
// Usage: node oidc_provider_peer.mjs PORT CLIENT_ID CLIENT_SECRET
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret] = process.argv.slice(2);
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', alg: 'ES256', use: 'sig' };
const audience = 'https://api.example.test';

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'api.read',
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [jwk] },
  scopes: ['api.read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api.read',
        audience,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 3600,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write(`oidc-provider listening on ${port}\n`);
});

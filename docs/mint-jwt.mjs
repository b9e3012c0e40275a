#!/usr/bin/env node
// Mints a JWT that kgate accepts, with jose (docs/auth.md). For testing and as
// a model for a site's own backend; a real site mints in its login flow.
//
//   node docs/mint-jwt.mjs --secret-file jwt-secret --issuer https://site.example \
//     --audience kgate --sub alice [--tenant acme] [--scope "kgate:tenant-admin"] [--ttl 3600]
//
//   node docs/mint-jwt.mjs --key private.pem --alg RS256 --kid key-1 ...   (a JWKS key pair)
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { importPKCS8, SignJWT } from 'jose';

const { values: a } = parseArgs({
  options: {
    'secret-file': { type: 'string' },
    key: { type: 'string' },
    alg: { type: 'string' },
    kid: { type: 'string' },
    issuer: { type: 'string' },
    audience: { type: 'string' },
    sub: { type: 'string' },
    tenant: { type: 'string' },
    scope: { type: 'string' },
    ttl: { type: 'string', default: '3600' },
  },
});
if (!a.issuer || !a.audience || !a.sub || (!a['secret-file'] && !a.key)) {
  process.stderr.write(
    'usage: mint-jwt.mjs (--secret-file FILE | --key PKCS8.pem --alg RS256 [--kid K]) --issuer ISS --audience AUD --sub USER [--tenant T] [--scope S] [--ttl SECONDS]\n',
  );
  process.exit(2);
}

let key;
let alg;
if (a['secret-file']) {
  // kgate drops a trailing newline from the secret file; so does this.
  const bytes = readFileSync(a['secret-file']);
  let end = bytes.length;
  while (end > 0 && (bytes[end - 1] === 0x0a || bytes[end - 1] === 0x0d)) end--;
  key = new Uint8Array(bytes.subarray(0, end));
  alg = a.alg ?? 'HS256';
} else {
  alg = a.alg ?? 'RS256';
  key = await importPKCS8(readFileSync(a.key, 'utf8'), alg);
}

const claims = { ...(a.tenant ? { tenant: a.tenant } : {}), ...(a.scope ? { scope: a.scope } : {}) };
const jwt = await new SignJWT(claims)
  .setProtectedHeader({ alg, ...(a.kid ? { kid: a.kid } : {}) })
  .setIssuer(a.issuer)
  .setAudience(a.audience)
  .setSubject(a.sub)
  .setIssuedAt()
  .setExpirationTime(`${Number(a.ttl)}s`)
  .sign(key);
process.stdout.write(`${jwt}\n`);

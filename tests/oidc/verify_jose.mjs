// Verify compact JWTs with panva/jose (a dependency of oidc-provider, hoisted into node_modules).
// stdin: {"jwks": {...}, "tokens": ["...", ...], "issuer": "...", "audience": "...", "typ": "..."|null}
// stdout: one JSON line per token: {"ok": true, "header": {...}, "payload": {...}} or {"ok": false, "error": "..."}
import { createLocalJWKSet, jwtVerify } from "jose";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);
const keys = createLocalJWKSet(request.jwks);
for (const token of request.tokens) {
  try {
    const options = { issuer: request.issuer, audience: request.audience };
    if (request.typ) options.typ = request.typ;
    const { payload, protectedHeader } = await jwtVerify(token, keys, options);
    console.log(JSON.stringify({ ok: true, header: protectedHeader, payload }));
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: String(error.code || error.message) }));
  }
}

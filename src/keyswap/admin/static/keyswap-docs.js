// Starts Swagger UI on the admin API's own OpenAPI document. Served by `keyswap admin` from the
// package (/docs/assets/keyswap-docs.js), so that /docs needs no inline script and nothing from
// elsewhere: its Content-Security-Policy allows scripts from the server itself only.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    // Relative to /docs, so the page also works behind a proxy that mounts the API under a prefix.
    url: "openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    displayRequestDuration: true,
    // No online validator badge (it would call a public service) and no spec URL from the query.
    validatorUrl: null,
    queryConfigEnabled: false,
    // The admin token given under "Authorize" lives in this page only, never in localStorage.
    persistAuthorization: false,
  });
});

// Starts Swagger UI on /docs. A same-origin file, not an inline script, so the page's
// Content-Security-Policy can forbid inline scripts entirely.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    // Relative to the page, so the docs also work behind a path-prefixing proxy.
    url: new URL("api/v1/openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    // Never ask the public validator service: the page works offline and leaks nothing.
    validatorUrl: null,
    deepLinking: true,
    persistAuthorization: false,
  });
});

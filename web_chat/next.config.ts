import type { NextConfig } from "next";

/**
 * Production builds are a static export (web_chat/out) that the backend serves at `/`, so the UI and the API
 * share one origin. `next dev` has no backend of its own: it proxies the API paths to a running one.
 */
const isDev = process.env.NODE_ENV === "development";
const backendUrl = process.env.NANOPRIME_BACKEND_URL ?? "http://127.0.0.1:8000";

const config: NextConfig = {
  reactStrictMode: true,
  poweredByHeader: false,
  ...(isDev
    ? {
        async rewrites() {
          return [
            { source: "/api/:path*", destination: `${backendUrl}/api/:path*` },
            { source: "/v1/:path*", destination: `${backendUrl}/v1/:path*` },
            { source: "/health", destination: `${backendUrl}/health` },
          ];
        },
      }
    : { output: "export" as const }),
};

export default config;

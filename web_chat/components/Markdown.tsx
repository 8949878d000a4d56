"use client";

import { memo, type ReactNode } from "react";
import ReactMarkdown, { type Components } from "react-markdown";
import rehypeHighlight from "rehype-highlight";
import remarkGfm from "remark-gfm";
import remarkHtmlAsText from "@/lib/remark-html-as-text";
import { CopyButton } from "./CopyButton";

interface HastNode {
  type: string;
  value?: string;
  tagName?: string;
  properties?: { className?: unknown };
  children?: HastNode[];
}

function textOf(node: HastNode | undefined): string {
  if (!node) return "";
  if (node.type === "text") return node.value ?? "";
  return (node.children ?? []).map(textOf).join("");
}

function languageOf(code: HastNode | undefined): string | null {
  const classes = code?.properties?.className;
  if (!Array.isArray(classes)) return null;
  const found = classes.find((c): c is string => typeof c === "string" && c.startsWith("language-"));
  return found ? found.slice("language-".length) : null;
}

function CodeBlock({ node, children }: { node?: HastNode; children?: ReactNode }) {
  const code = node?.children?.find((child) => child.type === "element" && child.tagName === "code");
  const language = languageOf(code);
  const text = textOf(code).replace(/\n$/, "");
  return (
    <div className="overflow-hidden rounded-xl border border-line bg-code" data-testid="code-block">
      <div className="flex items-center justify-between bg-code-head px-3 py-1.5 text-xs text-fg-soft">
        <span className="font-mono">{language ?? "text"}</span>
        <CopyButton text={text} label="Copy code" showLabel testId="copy-code" className="px-1.5 py-0.5" />
      </div>
      <pre className="overflow-x-auto p-3.5 text-[13px] leading-relaxed">{children}</pre>
    </div>
  );
}

const components: Components = {
  pre: ({ node, children }) => <CodeBlock node={node as HastNode | undefined}>{children}</CodeBlock>,
  code: ({ className, children }) => <code className={`font-mono ${className ?? ""}`}>{children}</code>,
  a: ({ href, children }) => (
    <a href={href} target="_blank" rel="noopener noreferrer nofollow">
      {children}
    </a>
  ),
  // No remote images from an answer (they would load from anywhere): show a link instead.
  img: ({ src, alt }) =>
    typeof src === "string" && src ? (
      <a href={src} target="_blank" rel="noopener noreferrer nofollow">
        [image{alt ? `: ${alt}` : ""}]
      </a>
    ) : (
      <span>[image{alt ? `: ${alt}` : ""}]</span>
    ),
  table: ({ children }) => (
    <div className="overflow-x-auto">
      <table>{children}</table>
    </div>
  ),
};

const remarkPlugins = [remarkGfm, remarkHtmlAsText];
const rehypePlugins = [[rehypeHighlight, { detect: false }]] as NonNullable<
  Parameters<typeof ReactMarkdown>[0]["rehypePlugins"]
>;

/** An answer's Markdown: GitHub flavour, highlighted code, and never any HTML from the text itself. */
export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="markdown">
      <ReactMarkdown remarkPlugins={remarkPlugins} rehypePlugins={rehypePlugins} components={components}>
        {text}
      </ReactMarkdown>
    </div>
  );
});

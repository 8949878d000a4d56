"use client";

import { useEffect, useState } from "react";
import { copyText } from "@/lib/clipboard";
import { CheckIcon, CopyIcon } from "./icons";

/** A copy button that says "Copied" for a moment, so the click visibly did something. */
export function CopyButton({
  text,
  label = "Copy",
  showLabel = false,
  className = "",
  testId,
}: {
  text: string;
  label?: string;
  showLabel?: boolean;
  className?: string;
  testId?: string;
}) {
  const [copied, setCopied] = useState(false);
  useEffect(() => {
    if (!copied) return;
    const timer = setTimeout(() => setCopied(false), 1600);
    return () => clearTimeout(timer);
  }, [copied]);

  return (
    <button
      type="button"
      data-testid={testId}
      aria-label={copied ? "Copied" : label}
      title={copied ? "Copied" : label}
      onClick={async () => setCopied(await copyText(text))}
      className={`inline-flex items-center gap-1.5 rounded-md text-fg-soft transition-colors hover:text-fg ${className}`}
    >
      {copied ? <CheckIcon size={15} /> : <CopyIcon size={15} />}
      {showLabel && <span className="text-xs">{copied ? "Copied" : label}</span>}
    </button>
  );
}

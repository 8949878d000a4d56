"use client";

import { useEffect, useRef, type ReactNode } from "react";
import { CloseIcon } from "./icons";

/**
 * A modal on the native <dialog>: the browser traps focus, closes on Esc and restores focus afterwards,
 * which is more reliable than anything hand-rolled.
 */
export function Modal({
  open,
  onClose,
  title,
  children,
  testId,
  wide = false,
}: {
  open: boolean;
  onClose: () => void;
  title: string;
  children: ReactNode;
  testId?: string;
  wide?: boolean;
}) {
  const dialog = useRef<HTMLDialogElement>(null);

  useEffect(() => {
    const el = dialog.current;
    if (!el) return;
    if (open && !el.open) el.showModal();
    if (!open && el.open) el.close();
  }, [open]);

  return (
    <dialog
      ref={dialog}
      data-testid={testId}
      aria-label={title}
      onClose={onClose}
      onClick={(e) => {
        if (e.target === dialog.current) onClose(); // a click on the backdrop
      }}
      className={`m-auto w-[calc(100vw-2rem)] ${
        wide ? "max-w-lg" : "max-w-sm"
      } max-h-[calc(100dvh-2rem)] overflow-hidden rounded-2xl border border-line bg-raised p-0 text-fg shadow-2xl`}
    >
      {open && (
        <div className="flex max-h-[calc(100dvh-2rem)] flex-col">
          <div className="flex items-center justify-between border-b border-line px-5 py-3.5">
            <h2 className="text-base font-semibold">{title}</h2>
            <button
              type="button"
              aria-label="Close"
              data-testid={testId ? `${testId}-close` : undefined}
              onClick={onClose}
              className="-mr-1.5 rounded-lg p-1.5 text-fg-soft hover:bg-hover hover:text-fg"
            >
              <CloseIcon size={18} />
            </button>
          </div>
          <div className="overflow-y-auto px-5 py-4">{children}</div>
        </div>
      )}
    </dialog>
  );
}

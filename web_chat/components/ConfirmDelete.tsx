"use client";

import { useState } from "react";
import type { ConversationSummary } from "@/lib/api-types";
import { Modal } from "./Modal";

/** Deleting is permanent, so it asks first and says what will go. */
export function ConfirmDelete({
  conversation,
  onCancel,
  onConfirm,
}: {
  conversation: ConversationSummary | null;
  onCancel: () => void;
  onConfirm: (conversation: ConversationSummary) => Promise<void>;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  const close = () => {
    setError(null);
    onCancel();
  };

  return (
    <Modal open={conversation !== null} onClose={close} title="Delete conversation?" testId="delete-dialog">
      <p className="text-sm leading-relaxed text-fg-soft">
        This deletes <strong className="font-medium text-fg [overflow-wrap:anywhere]">“{conversation?.title}”</strong>{" "}
        and all its messages. This cannot be undone.
      </p>
      {error && (
        <p role="alert" className="mt-3 text-sm text-danger">
          {error}
        </p>
      )}
      <div className="mt-5 flex justify-end gap-2">
        <button
          type="button"
          onClick={close}
          className="rounded-full border border-line px-4 py-2 text-sm font-medium hover:bg-hover"
        >
          Cancel
        </button>
        <button
          type="button"
          data-testid="confirm-delete"
          disabled={busy}
          onClick={async () => {
            if (!conversation) return;
            setBusy(true);
            try {
              await onConfirm(conversation);
              setError(null);
            } catch (err) {
              setError(err instanceof Error ? err.message : String(err));
            } finally {
              setBusy(false);
            }
          }}
          className="rounded-full bg-danger px-4 py-2 text-sm font-medium text-white hover:opacity-90 disabled:opacity-50"
        >
          Delete
        </button>
      </div>
    </Modal>
  );
}

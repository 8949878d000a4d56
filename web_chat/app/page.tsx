import { ChatApp } from "@/components/ChatApp";

/** The whole app is one page; a conversation opens by `/?c=<id>`, so the static export needs no dynamic routes. */
export default function Page() {
  return <ChatApp />;
}

/**
 * A remark plugin that turns raw HTML in Markdown into plain text, block HTML into a paragraph of text.
 * The model can write anything, including `<img onerror=…>` or `<script>`; showing those as the characters
 * they are (React escapes text) means no markup from an answer ever reaches the DOM, whatever the renderer's
 * own defaults, and the reader sees exactly what the model wrote, laid out like any other paragraph.
 */

interface MdNode {
  type: string;
  value?: string;
  children?: MdNode[];
}

/** Parents whose children are blocks: a bare text node there needs a paragraph around it. */
const FLOW_PARENTS = new Set(["root", "blockquote", "listItem", "footnoteDefinition"]);

function rewrite(node: MdNode): void {
  if (!node.children) return;
  node.children = node.children.map((child) => {
    if (child.type !== "html") {
      rewrite(child);
      return child;
    }
    const text: MdNode = { type: "text", value: child.value ?? "" };
    return FLOW_PARENTS.has(node.type) ? { type: "paragraph", children: [text] } : text;
  });
}

export default function remarkHtmlAsText() {
  return (tree: MdNode) => rewrite(tree);
}

// @vitest-environment happy-dom
import { cleanup, render } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { Markdown } from "@/components/Markdown";

afterEach(cleanup);

describe("Markdown", () => {
  it("shows raw HTML as the text it is: no element, no handler, no script", () => {
    const hostile =
      'Look: <img src=x onerror=alert(1)> inline.\n\n<script>alert("x")</script>\n\n<div onclick="alert(2)">block</div>';
    const { container } = render(<Markdown text={hostile} />);
    expect(container.querySelector("img")).toBeNull();
    expect(container.querySelector("script")).toBeNull();
    expect(container.querySelector("[onerror], [onclick]")).toBeNull();
    expect(container.querySelector(".markdown div")).toBeNull();
    const text = container.textContent ?? "";
    expect(text).toContain("<img src=x onerror=alert(1)>");
    expect(text).toContain('<script>alert("x")</script>');
    expect(text).toContain('<div onclick="alert(2)">block</div>');
    const paragraphs = [...container.querySelectorAll(".markdown > p")].map((p) => p.textContent);
    expect(paragraphs).toEqual([
      "Look: <img src=x onerror=alert(1)> inline.",
      '<script>alert("x")</script>',
      '<div onclick="alert(2)">block</div>',
    ]);
  });

  it("drops javascript: links and turns images into links", () => {
    const { container } = render(
      <Markdown text={"[click](javascript:alert(1)) ![cat](https://example.com/cat.png)"} />,
    );
    const hrefs = [...container.querySelectorAll("a")].map((a) => a.getAttribute("href") ?? "");
    expect(hrefs.some((href) => href.startsWith("javascript"))).toBe(false);
    expect(container.querySelector("img")).toBeNull();
    expect(container.textContent).toContain("[image: cat]");
  });

  it("highlights fenced code, names its language and offers a copy button", () => {
    const { getByTestId } = render(<Markdown text={"```python\ndef f(x):\n    return x + 1\n```"} />);
    const block = getByTestId("code-block");
    expect(block.textContent).toContain("python");
    expect(block.querySelector("pre code .hljs-keyword")?.textContent).toBe("def");
    expect(block.querySelector("pre")?.textContent).toBe("def f(x):\n    return x + 1\n");
    expect(getByTestId("copy-code").getAttribute("aria-label")).toBe("Copy code");
  });

  it("renders GitHub tables inside a scroll box", () => {
    const { container } = render(<Markdown text={"| a | b |\n|---|---|\n| 1 | 2 |"} />);
    expect(container.querySelector("div.overflow-x-auto > table td")?.textContent).toBe("1");
  });
});

"""The Ollama TEMPLATE of `export ollama`, rendered by Go's own text/template, equals our renderer's text.

Go's ``text/template`` (Debian's ``golang-go``; ``.ci/run`` installs it) executes each exported template with the
values Ollama documents for it (``.System``, ``.Messages`` with ``.Role``/``.Content``/``.Thinking``, ``.Think``,
and ``.Prompt`` for the single-turn form), after Ollama's documented message collation. Each result must be
``render_prompt``'s text for the same conversation (``export_templates.to_our_messages``), without the BOS text
llama.cpp adds as a token. This proves our template, not Ollama's runtime. The harness also reads the thinking
tags back from the template by the rule Ollama's ``thinking.InferTags`` documents, so Ollama can split
``message.thinking`` out of a reply.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from preflexor_local.convert.export_templates import ollama_template, to_our_messages
from preflexor_local.prompt import KNOWN_TEMPLATES, ChatTemplate, render_prompt

GO_HARNESS = r"""// Renders an Ollama TEMPLATE with Go's own text/template, given the values Ollama documents.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

type message struct {
	Role     string `json:"role"`
	Content  string `json:"content"`
	Thinking string `json:"thinking"`
}

type testCase struct {
	Messages []message `json:"messages"`
	Think    bool      `json:"think"`
	System   string    `json:"system"`
	Prompt   string    `json:"prompt"`
}

type input struct {
	Template string     `json:"template"`
	Cases    []testCase `json:"cases"`
}

// collate follows Ollama's documented rule: every system message is also joined into .System,
// and consecutive messages of one role become one, "\n\n" between them.
func collate(msgs []message) (string, []map[string]any) {
	var system []string
	var out []map[string]any
	for _, m := range msgs {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(out); n > 0 && out[n-1]["Role"] == m.Role {
			out[n-1]["Content"] = out[n-1]["Content"].(string) + "\n\n" + m.Content
			continue
		}
		out = append(out, map[string]any{"Role": m.Role, "Content": m.Content, "Thinking": m.Thinking})
	}
	return strings.Join(system, "\n\n"), out
}

// tags: the first and last text of the list that holds {{ .Thinking }} inside a range over .Messages.
func tags(root parse.Node) (string, string) {
	open, close := "", ""
	var walk func(n parse.Node, lists []*parse.ListNode, inRange bool)
	walk = func(n parse.Node, lists []*parse.ListNode, inRange bool) {
		switch x := n.(type) {
		case *parse.ListNode:
			if x == nil {
				return
			}
			for _, c := range x.Nodes {
				walk(c, append(lists, x), inRange)
			}
		case *parse.RangeNode:
			walk(x.List, lists, inRange || strings.Contains(x.Pipe.String(), ".Messages"))
			walk(x.ElseList, lists, inRange)
		case *parse.IfNode:
			walk(x.List, lists, inRange)
			walk(x.ElseList, lists, inRange)
		case *parse.WithNode:
			walk(x.List, lists, inRange)
			walk(x.ElseList, lists, inRange)
		case *parse.ActionNode:
			if inRange && strings.TrimSpace(x.Pipe.String()) == ".Thinking" && len(lists) > 0 {
				l := lists[len(lists)-1]
				if t, ok := l.Nodes[0].(*parse.TextNode); ok {
					open = strings.TrimSpace(string(t.Text))
				}
				if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
					close = strings.TrimSpace(string(t.Text))
				}
			}
		}
	}
	walk(root, nil, false)
	return open, close
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("ollama").Parse(in.Template))
	var outputs []string
	for _, c := range in.Cases {
		data := map[string]any{"Response": "", "Think": c.Think, "ThinkLevel": "", "IsThinkSet": c.Think}
		if len(c.Messages) > 0 {
			data["System"], data["Messages"] = collate(c.Messages)
		} else {
			data["System"], data["Prompt"] = c.System, c.Prompt
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		outputs = append(outputs, b.String())
	}
	open, close := tags(tmpl.Tree.Root)
	json.NewEncoder(os.Stdout).Encode(map[string]any{"outputs": outputs, "tags": []string{open, close}})
}
"""

EOS = "</s>"
T = "Spider silk combines stiff beta-sheet crystals with an extensible amorphous matrix."
CONVERSATIONS = [
    ([{"role": "user", "content": "Why is spider silk tough?"}], False),
    ([{"role": "user", "content": "Why is spider silk tough? Use <|thinking|>."}], True),
    ([{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Why is bone tough?"}], True),
    (
        [
            {"role": "user", "content": "Why is spider silk tough?"},
            {"role": "assistant", "thinking": T, "content": "Crystals give strength, the matrix gives stretch."},
            {"role": "user", "content": "And nacre?"},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        False,
    ),
    ([{"role": "user", "content": "Why is silk tough?"}, {"role": "assistant", "thinking": T, "content": "Because"}], True),  # pre-fill
    ([{"role": "user", "content": "Why is silk tough?"}, {"role": "assistant", "content": "The answer is"}], False),
    ([{"role": "system", "content": "You are a materials scientist."}], True),
]
LEGACY = [("", "Why is spider silk tough?", False), ("Answer briefly.", "Why is bone tough?", True)]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        pytest.fail("the Go toolchain is not on PATH: apt-get install -y golang-go (.ci/run installs it)")
    root = tmp_path_factory.mktemp("go")
    (root / "main.go").write_text(GO_HARNESS, encoding="utf-8")
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "gopath"), "GO111MODULE": "off", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(root / "render"), str(root / "main.go")], check=True, env=env, cwd=root, capture_output=True)

    def render(template: str, cases: list[dict]) -> dict:
        done = subprocess.run([str(root / "render")], input=json.dumps({"template": template, "cases": cases}), capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    return render


@pytest.mark.parametrize("name", sorted(KNOWN_TEMPLATES))
def test_go_template_renders_what_render_prompt_renders(go_render, name):
    template = ChatTemplate(name, KNOWN_TEMPLATES[name][0], bos_token="", eos_token=EOS)
    cases = [{"messages": msgs, "think": think} for msgs, think in CONVERSATIONS]
    cases += [{"system": system, "prompt": prompt, "think": think} for system, prompt, think in LEGACY]
    got = go_render(ollama_template(name, EOS), cases)
    expected = [render_prompt(template, *to_our_messages(msgs, think)) for msgs, think in CONVERSATIONS]
    expected += [
        render_prompt(template, *to_our_messages([*([{"role": "system", "content": s}] if s else []), {"role": "user", "content": p}], th))
        for s, p, th in LEGACY
    ]
    for case, ours, go in zip(cases, expected, got["outputs"]):
        assert go == ours, f"{name}: {case}"
    assert got["tags"] == ["<|thinking|>", "<|/thinking|>"]  # Ollama can split message.thinking from a reply
    assert any("<|thinking|>" in text for text in got["outputs"])  # the cases exercise the thinking (the test can fail)


def test_think_opens_the_thinking_section_like_ask(go_render):
    """With think on, the prompt ends with the opening tag (Ollama then parses the reply as thinking); off, it does not."""
    msgs = [{"role": "user", "content": "Why?"}]
    on, off = go_render(ollama_template("gemma"), [{"messages": msgs, "think": True}, {"messages": msgs, "think": False}])["outputs"]
    assert on == off + "<|thinking|>\n" and on.strip().endswith("<|thinking|>")

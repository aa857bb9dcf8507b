// The cnndsl extension: .cnn highlighting (cnn.tmLanguage.json, generated from the op registry by
// `python -m cnndsl.tools.editors`) and the language server, `cnndsl lsp`, spoken to over stdio.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("cnndsl");
  const server = {
    command: config.get("server.command", "cnndsl"),
    args: config.get("server.args", ["lsp"]),
    transport: TransportKind.stdio,
  };
  client = new LanguageClient("cnndsl", "cnndsl language server", server, {
    documentSelector: [{ scheme: "file", language: "cnn" }, { scheme: "untitled", language: "cnn" }],
  });
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };

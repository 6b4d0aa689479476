"""What rewriting a file needs whatever its format: the plan of the new blob (`plan`), the
payloads streamed into place (`stream`), the copy-patch-apply of a file (`fileedit`) and the
error a verifier raises (`verification`). Format packages import these; nothing here imports
a format."""

-- POST /jobs with an empty body: every answer should be 201 (no Idempotency-Key).
wrk.method = "POST"
wrk.body = ""

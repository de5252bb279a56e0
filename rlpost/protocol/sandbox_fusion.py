"""What both ends of Sandbox Fusion's /run_code API agree on: the tool (a client) and `rlpost serve sandbox`."""

# every language Sandbox Fusion's API accepts; a request for one outside this list is invalid (HTTP 422 there too)
LANGUAGES = ("python", "cpp", "nodejs", "go", "go_test", "java", "php", "csharp", "bash", "typescript", "sql", "rust",
             "cuda", "lua", "R", "perl", "D_ut", "ruby", "scala", "julia", "pytest", "junit", "kotlin_script", "jest",
             "verilog", "python_gpu", "lean", "swift", "racket")
